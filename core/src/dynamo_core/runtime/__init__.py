"""Runtime: discovery, request plane, event plane."""
