"""Built-in action kinds executed by workers."""
