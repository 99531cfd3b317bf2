"""The monitor service: evaluates monitors and fires triggers for their pipelines."""
