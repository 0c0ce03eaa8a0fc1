"""Patch engine for NVIDIA cosmos-predict2: structural (AST-anchored), transactional edits."""
