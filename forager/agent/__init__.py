"""The ForagerAgent: the episode loop, its prompts and configuration, and the collection runner.

    from forager.agent import AgentConfig, make_env, run_episode
    from forager.policies import make_policy

    env = make_env(AgentConfig())
    trajectory = run_episode(env, make_policy("openai", base_url=..., model=...), task)
"""

from forager.agent.collect import CollectStats, collect
from forager.agent.config import AgentConfig, CollectConfig, load_agent_config
from forager.agent.loop import make_env, run_episode
from forager.policies.spec import PolicySpec  # the policies' own description, re-exported for convenience

__all__ = ["AgentConfig", "CollectConfig", "CollectStats", "PolicySpec", "collect",
           "load_agent_config", "make_env", "run_episode"]
