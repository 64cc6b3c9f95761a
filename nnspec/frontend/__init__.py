"""The front half: `.nn` text or YAML -> AST -> IR graph."""
from .load import check_file, load_graph, load_module

__all__ = ["check_file", "load_graph", "load_module"]
