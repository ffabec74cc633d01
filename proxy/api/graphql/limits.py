"""Validation rules that bound an operation's cost before anything runs: depth, aliases, introspection.

They run in graphql-core's validation pass (cached per document by strawberry), so a refused operation
touches no resolver. Each error carries `extensions.code` so clients can tell them apart.
"""

from __future__ import annotations

from typing import Any

from graphql import (
    ASTValidationRule,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    ValidationContext,
)

TOO_DEEP, TOO_MANY_ALIASES = "QUERY_TOO_DEEP", "TOO_MANY_ALIASES"


def depth_of(sel: SelectionSetNode | None, fragments: dict[str, FragmentDefinitionNode],
             seen: frozenset[str] = frozenset()) -> int:
    """Fields nested in `sel` (a root field alone is 1). Fragments count as their fields; a fragment
    cycle (invalid anyway, reported by the standard rules) stops the walk instead of recursing forever."""
    if sel is None:
        return 0
    deepest = 0
    for node in sel.selections:
        if isinstance(node, FieldNode):
            d = 1 + depth_of(node.selection_set, fragments, seen)
        elif isinstance(node, InlineFragmentNode):
            d = depth_of(node.selection_set, fragments, seen)
        elif isinstance(node, FragmentSpreadNode):
            name = node.name.value
            frag = fragments.get(name)
            d = 0 if frag is None or name in seen else depth_of(frag.selection_set, fragments, seen | {name})
        else:
            d = 0
        deepest = max(deepest, d)
    return deepest


def depth_rule(limit: int) -> type[ASTValidationRule]:
    class MaxDepth(ASTValidationRule):
        def enter_operation_definition(self, node: OperationDefinitionNode, *_: Any) -> None:
            ctx = self.context
            frags = {f.name.value: f for f in ctx.document.definitions if isinstance(f, FragmentDefinitionNode)}
            depth = depth_of(node.selection_set, frags)
            if depth > limit:
                name = node.name.value if node.name else "anonymous"
                ctx.report_error(GraphQLError(
                    f"Operation '{name}' is {depth} levels deep; the limit is {limit}.", node,
                    extensions={"code": TOO_DEEP}))

    return MaxDepth


def alias_rule(limit: int) -> type[ASTValidationRule]:
    class MaxAliases(ASTValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.count = 0

        def enter_field(self, node: FieldNode, *_: Any) -> None:
            if node.alias is not None:
                self.count += 1
                if self.count == limit + 1:
                    self.context.report_error(GraphQLError(
                        f"The document uses more than {limit} aliases.", node,
                        extensions={"code": TOO_MANY_ALIASES}))

    return MaxAliases
