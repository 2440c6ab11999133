"""Control systems: RL and policy learners that route among experts (skillblend, macrohft, t2mir, mergevla)."""
