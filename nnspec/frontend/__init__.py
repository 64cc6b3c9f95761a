"""The front half: `.nn` text or YAML -> AST -> IR graph."""
