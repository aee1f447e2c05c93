"""The sub-commands of `client`, one module each."""
