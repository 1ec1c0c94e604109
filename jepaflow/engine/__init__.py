"""The engine: training loop, schedules, checkpoints, distributed setup, logging. Imports no method."""
