"""Engines that run the per-row stages somewhere other than the step's own process (Ray Data)."""
