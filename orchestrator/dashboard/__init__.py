"""The cluster dashboard: traffic recording, history, the live feed and the page it serves."""
