"""Training (SFT, RL, rewards, curriculum): imported only by stage workers, never by the daemon."""
