"""Start the user's command with the probe injected, and watch it to the end."""
