"""pr1d sim: a simulated agent platform (scoring API, gradebook, critic, agent manager)."""
