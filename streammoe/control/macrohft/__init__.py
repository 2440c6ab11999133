"""MacroHFT: regime sub-agents (double DQN, dueling head, FiLM context adapter) trained on market
chunks, and a hyper-agent that routes among them with an episodic memory. See docs/macrohft.md.

Modules: ``data`` (OHLCV loading, synthetic market, splits), ``features``, ``regimes`` (market
decomposition), ``teacher`` (reward and DP teacher), ``networks``, ``memory``, ``train``,
``metrics``, ``model`` (checkpoints, MACD rule) and ``experiment`` (the Hydra entry).
"""
