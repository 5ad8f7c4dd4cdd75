"""Run-time pieces built by the Runner: runner and switch, loop, LR, hooks,
exact resume, precise BN."""
