"""What a network is: the search space, its candidate blocks and the op spec that the service, the agents and
the search all key on. Nothing here knows about tables, measurements or training.

`get_space` and `SearchSpace` are re-exported because they are the entry point a user reaches for first.
"""

from search.space.macro import SearchSpace, get_space

__all__ = ["SearchSpace", "get_space"]
