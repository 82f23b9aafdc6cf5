"""The command line: arguments, configs, runs, reports."""
