"""Domain logic, one module per resource family: the only place that changes state."""
