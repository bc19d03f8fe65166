"""Format and dataset commands: info, dataset build, dataset info."""
