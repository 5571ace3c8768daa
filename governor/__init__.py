"""llm-governor: budgets, caps and cost telemetry between agents and model calls."""
