"""The multigrid schedule: pure maths (shapes, stages, LR rules, options,
the plan)."""
