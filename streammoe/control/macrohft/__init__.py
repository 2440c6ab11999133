"""MacroHFT: regime sub-agents (double DQN, dueling head, FiLM context adapter) trained on market
chunks, and a hyper-agent that routes among them with an episodic memory. See docs/macrohft.md.

Modules: ``regimes`` (market decomposition), ``networks``, ``memory``, ``train``, ``metrics``,
``model`` (checkpoints, MACD rule), ``config`` (the typed schema) and ``experiment`` (the Hydra
entry). The market itself (OHLCV data, features, reward and DP teacher, the env) is
:mod:`streammoe_envs.trading`.
"""
