"""What strings stages together: the demo, the transfer study."""
