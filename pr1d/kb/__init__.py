"""Knowledge base: vector stores, cache and service discovery."""
