"""The chaos and abuse suite (`make chaos`): real processes, real faults, one line per
scenario. Not collected by pytest (no test_*.py files): it runs for minutes, on its own."""
