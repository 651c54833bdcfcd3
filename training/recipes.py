"""Recipes: a staged transfer-learning fit described as data in a TOML file."""
from __future__ import annotations

import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .backbones import BACKBONES

RECIPE_DIR = Path(__file__).parent / "recipes"


class RecipeError(ValueError):
    """A recipe file that cannot be used, with the reason."""


def bounded(default, low, high, fastai: bool = False):
    """A numeric recipe key: its default and its bounds, stated once; `fastai`: passed on to `aug_transforms`."""
    return field(default=default, metadata={"bounds": (low, high), "fastai": fastai})


@dataclass(frozen=True)
class Augmentation:
    """What a stage does to its training photos: fastai's `aug_transforms` keywords, and our close-ups."""

    enabled: bool = True
    close_ups: float = 0.0
    fastai: tuple[tuple[str, float], ...] = ()  # (keyword, value) pairs, hashable as the frozen stage is


@dataclass(frozen=True)
class Stage:
    """One `fit_one_cycle` call: which backbone, at what size, frozen or not, for how long.

    A recipe accepts exactly these fields as keys; a numeric one's bounds live in its `bounded(...)` here.
    """

    name: str
    backbone: str
    size: int
    frozen: bool
    epochs: int | tuple[int, int]   # [low, high]: as many as the recipe's time budget leaves room for (training.runplan)
    lr: float | tuple[float, float] | str
    bs: int = bounded(64, 1, 4096)
    label_smoothing: float = bounded(0.0, 0.0, 0.5)
    augment: bool = True
    close_ups: float = bounded(0.0, 0.0, 1.0)  # share of training photos replaced by a close-up (augment only)
    max_rotate: float = bounded(10.0, 0.0, 180.0, fastai=True)  # degrees, either way
    max_zoom: float = bounded(1.15, 1.0, 4.0, fastai=True)  # fastai's zoom-in, at a random centre
    max_warp: float = bounded(0.1, 0.0, 0.9, fastai=True)  # fastai's perspective warp, as a photo taken at an angle
    frozen_groups: int = bounded(0, 0, 1)  # unfrozen stages: parameter groups, from the input, that stay frozen
    train_bn: bool = True    # fastai's default; False freezes BatchNorm in frozen groups too, so no backward reaches them

    @property
    def augmentation(self) -> Augmentation:
        """The stage's augmentation as one object for `make_dataloaders`."""
        passed = tuple((f.name, getattr(self, f.name)) for f in fields(self) if f.metadata.get("fastai"))
        return Augmentation(self.augment, self.close_ups, passed)

    @property
    def elastic(self) -> bool:
        """Whether the number of epochs is chosen at run time from the time budget."""
        return isinstance(self.epochs, tuple)

    @property
    def max_epochs(self) -> int:
        """The most epochs this stage can run."""
        return self.epochs[1] if self.elastic else self.epochs

    def lr_for_fit(self, found: float | None = None):
        """The `lr_max` argument for fastai: a float, or a slice for discriminative rates."""
        if self.lr == "find":
            return found
        if isinstance(self.lr, tuple):
            return slice(*self.lr)
        return self.lr


@dataclass(frozen=True)
class Recipe:
    """An ordered list of stages sharing one train/valid split."""

    name: str
    description: str
    stages: tuple[Stage, ...]
    valid_pct: float = 0.2
    seed: int = 42
    budget_minutes: float | None = None   # wall-clock goal for the whole run; sizes the stages with [low, high] epochs
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        """Plain data for reports and resume checks."""
        data = asdict(self)
        data.pop("source")
        return data


# The dataclasses' defaults are the only ones: the parser reads them from here.
STAGE_DEFAULTS = {f.name: f.default for f in fields(Stage) if f.default is not MISSING}
RECIPE_DEFAULTS = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}

_STAGE_KEYS = {f.name for f in fields(Stage)}
_BOUNDED = {f.name: (f.type, *f.metadata["bounds"]) for f in fields(Stage) if "bounds" in f.metadata}
_FLAGS = [f.name for f in fields(Stage) if f.type == "bool" and f.default is not MISSING]
_RECIPE_KEYS = {"description", "valid_pct", "seed", "budget_minutes", "stages"}


# Old names that still work: `seed` was the blog's recipe, easily confused with a recipe's split `seed`.
RECIPE_ALIASES = {"seed": "blog"}


def available_recipes() -> list[str]:
    """Names of the recipes shipped with the project."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def _recipe_number(value, what: str, where: str, kind=float, minimum=None, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RecipeError(f"{where}: {what} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise RecipeError(f"{where}: {what} must be between {minimum} and {maximum}, got {value!r}")
    return kind(value)


def _parse_lr(value, where: str):
    if value == "find":
        return "find"
    if isinstance(value, list):
        if len(value) != 2:
            raise RecipeError(f"{where}: lr as a list must be [low, high], got {value!r}")
        low, high = (_recipe_number(v, "lr", where, minimum=0) for v in value)
        if not 0 < low <= high:
            raise RecipeError(f"{where}: lr range needs 0 < low <= high, got {value!r}")
        return (low, high)
    if isinstance(value, str):
        raise RecipeError(f"{where}: lr must be a number, [low, high] or \"find\", got {value!r}")
    lr = _recipe_number(value, "lr", where, minimum=0)
    if lr <= 0:
        raise RecipeError(f"{where}: lr must be positive")
    return lr


def _parse_epochs(value, where: str):
    if isinstance(value, list):
        if len(value) != 2:
            raise RecipeError(f"{where}: epochs as a list must be [low, high], got {value!r}")
        low, high = (_recipe_number(v, "epochs", where, int, 0, 1000) for v in value)
        if low > high:
            raise RecipeError(f"{where}: epochs range needs low <= high, got {value!r}")
        return (low, high)
    return _recipe_number(value, "epochs", where, int, 1, 1000)


def _check_elastic(stages: tuple[Stage, ...], budget: float | None, source: str) -> None:
    for index, stage in enumerate(stages):
        if not stage.elastic:
            continue
        where = f"{source}, stage {index + 1}"
        if budget is None:
            raise RecipeError(f"{where}: epochs as [low, high] needs budget_minutes at the top of the recipe")
        if stage.epochs[1] == 0:
            raise RecipeError(f"{where}: epochs [0, 0] never trains; leave the stage out instead")
        if stage.epochs[0] == 0 and index in (0, len(stages) - 1):
            # the first stage trains the new head; the last is the size the model is exported at
            raise RecipeError(f"{where}: only a middle stage may be dropped (epochs [0, n]); the first and the last "
                              "need at least one epoch")


def _parse_stage(raw: dict, index: int, source: str) -> Stage:
    where = f"{source}, stage {index + 1}"
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: each [[stages]] entry must be a table")
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise RecipeError(f"{where}: unknown keys {sorted(unknown)}; allowed: {sorted(_STAGE_KEYS)}")
    missing = {"backbone", "frozen", "epochs", "lr"} - set(raw)
    if missing:
        raise RecipeError(f"{where}: missing keys {sorted(missing)}")
    backbone = raw["backbone"]
    if backbone not in BACKBONES:
        raise RecipeError(f"{where}: unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    if not isinstance(raw["frozen"], bool):
        raise RecipeError(f"{where}: frozen must be true or false, got {raw['frozen']!r}")
    for flag in _FLAGS:
        if not isinstance(raw.get(flag, STAGE_DEFAULTS[flag]), bool):
            raise RecipeError(f"{where}: {flag} must be true or false")
    numbers = {name: _recipe_number(raw.get(name, STAGE_DEFAULTS[name]), name, where, int if kind == "int" else float,
                                    low, high) for name, (kind, low, high) in _BOUNDED.items()}
    # Two groups are body parts (early, late) and one is the head; keeping both body groups frozen is `frozen = true`.
    if raw["frozen"] and numbers["frozen_groups"]:
        raise RecipeError(f"{where}: frozen_groups only applies to unfrozen stages (frozen = false)")
    return Stage(
        name=str(raw.get("name", f"stage{index + 1}")),
        backbone=backbone,
        size=_recipe_number(raw.get("size", BACKBONES[backbone].default_size), "size", where, int, 32, 1024),
        frozen=raw["frozen"],
        epochs=_parse_epochs(raw["epochs"], where),
        lr=_parse_lr(raw["lr"], where),
        **numbers,
        **{flag: raw.get(flag, STAGE_DEFAULTS[flag]) for flag in _FLAGS},
    )


def parse_recipe(text: str, name: str, source: str = "<string>") -> Recipe:
    """Parse and validate recipe TOML text."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{source}: not valid TOML: {exc}") from None
    unknown = set(raw) - _RECIPE_KEYS
    if unknown:
        raise RecipeError(f"{source}: unknown keys {sorted(unknown)}; allowed: {sorted(_RECIPE_KEYS)}")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise RecipeError(f"{source}: a recipe needs at least one [[stages]] table")
    parsed = tuple(_parse_stage(stage, i, source) for i, stage in enumerate(stages))
    budget = raw.get("budget_minutes")
    if budget is not None:
        budget = _recipe_number(budget, "budget_minutes", source, float, 1, 100000)
    _check_elastic(parsed, budget, source)
    names = [s.name for s in parsed]
    if len(set(names)) != len(names):
        raise RecipeError(f"{source}: stage names must be unique, got {names}")
    return Recipe(
        name=name,
        description=str(raw.get("description", "")),
        stages=parsed,
        valid_pct=_recipe_number(raw.get("valid_pct", RECIPE_DEFAULTS["valid_pct"]), "valid_pct", source, float, 0.01, 0.9),
        seed=_recipe_number(raw.get("seed", RECIPE_DEFAULTS["seed"]), "seed", source, int),
        budget_minutes=budget,
        source=source,
    )


def load_recipe(name_or_path: str) -> Recipe:
    """Load a shipped recipe by name, or any recipe file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = RECIPE_DIR / f"{RECIPE_ALIASES.get(name_or_path, name_or_path)}.toml"
        if not path.exists():
            raise RecipeError(f"no recipe named {name_or_path!r}; shipped recipes: {', '.join(available_recipes())}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise RecipeError(f"cannot read recipe {path}: {exc}") from None
    return parse_recipe(text, path.stem, str(path))
