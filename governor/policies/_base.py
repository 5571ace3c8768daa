"""The frozen model base shared by every policy part, and the merge rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from governor._errors import PolicyError

__all__ = ["PolicyModel"]


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    loc = ".".join(str(part) for part in error["loc"]) or "(model)"
    field = model.model_fields.get(str(error["loc"][0])) if error["loc"] else None
    accepted = f" Accepted: {field.description}" if field and field.description else ""
    return f"{loc}: {error['msg']} (got {error.get('input')!r}).{accepted}"


class PolicyModel(BaseModel):
    """Frozen, keyword-only, strict about unknown fields.

    Construction errors are raised as :class:`governor.PolicyError`, whose
    message names each bad field, the value given and the accepted forms.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            lines = [_describe(err, type(self)) for err in exc.errors()]
            raise PolicyError(
                f"invalid {type(self).__name__}: " + "; ".join(lines)
            ) from exc

    def merged(self, override: Self) -> Self:
        """Return a copy with the fields the override set explicitly laid over.

        Nested policy parts merge by the same rule; mappings merge key by key;
        every other field the override set replaces this one's.
        """
        if not isinstance(override, type(self)):
            raise PolicyError(
                f"cannot merge {type(override).__name__} into {type(self).__name__}"
            )
        updates = {
            name: _merge_value(getattr(self, name), getattr(override, name))
            for name in override.model_fields_set
        }
        return type(self)(**{**self._explicit(), **updates})

    def _explicit(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


def _merge_value(base: Any, override: Any) -> Any:
    if isinstance(base, PolicyModel) and isinstance(override, type(base)):
        return base.merged(override)
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        return {**base, **override}
    return override
