"""The trading market: OHLCV data (:mod:`.data`), causal features (:mod:`.features`), the reward
and its dynamic-programming teacher (:mod:`.teacher`) and the env (:class:`TradingEnv`,
``streammoe/Trading-v0``). MacroHFT trains on it; it imports nothing of MacroHFT."""

from streammoe_envs.trading.env import ENV_ID, TradingEnv

__all__ = ["ENV_ID", "TradingEnv"]
