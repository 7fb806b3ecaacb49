"""Per-architecture module maps: canonical points -> HF module paths."""

from blue_cli.models.families.spec import FAMILIES, FamilySpec, family_for

__all__ = ["FAMILIES", "FamilySpec", "family_for"]
