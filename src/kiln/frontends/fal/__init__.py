"""The fal frontend: fal's control plane (isolate's `IsolateController`) over kiln's core."""
