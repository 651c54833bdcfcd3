"""Human names for class ids and their groups: "gibson_Flying_V" is shown as "Gibson Flying V", or as DATA/classes.toml
says, and `[groups]` there gathers classes under a maker or a family ("a Fender, not sure which")."""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

CLASS_NAMES_FILE = "classes.toml"
GROUPS_TABLE = "groups"
KIND_TABLE = "kind"


class ClassNamesError(ValueError):
    """`classes.toml` cannot be read or names classes that are not there."""


@dataclass(frozen=True)
class ClassGroup:
    """Classes answered together when the model is sure of them as a whole but not of which one."""

    label: str
    name: str
    classes: tuple[str, ...]

    def to_meta(self) -> dict:
        """Plain data for the model's metadata."""
        return {"label": self.label, "name": self.name, "classes": list(self.classes)}

    @classmethod
    def from_meta(cls, meta: dict) -> ClassGroup:
        return cls(meta["label"], meta["name"], tuple(meta["classes"]))


def default_name(class_id: str) -> str:
    """A folder name as words: separators become spaces and each word starts with a capital."""
    words = [word for word in re.split(r"[_\-\s]+", class_id) if word]
    return " ".join(word[0].upper() + word[1:] for word in words) or class_id


def read_classes_file(root: Path) -> dict:
    """DATA/classes.toml as a table (empty when there is none)."""
    path = Path(root) / CLASS_NAMES_FILE
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClassNamesError(f"{path} is not valid TOML: {exc}") from exc


def class_names(root: Path, classes: list[str]) -> dict[str, str]:
    """Every class's display name: from DATA/classes.toml (id = "name") where it has one, else `default_name`."""
    names = {class_id: default_name(class_id) for class_id in classes}
    path = Path(root) / CLASS_NAMES_FILE
    given = {key: value for key, value in read_classes_file(root).items() if key not in (GROUPS_TABLE, KIND_TABLE)}
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ClassNamesError(f"{path} names {', '.join(unknown)}, which are not class folders ({', '.join(classes)})")
    for class_id, name in given.items():
        if not isinstance(name, str) or not name.strip():
            raise ClassNamesError(f"{path}: the name of {class_id} must be a non-empty string")
        names[class_id] = name.strip()
    return names


def class_groups(root: Path, classes: list[str]) -> list[ClassGroup]:
    """The `[groups]` of DATA/classes.toml (label = [class ids], or label = {name = "...", classes = [...]}), each
    keeping only the classes the data holds; a class belongs to one group at most."""
    path = Path(root) / CLASS_NAMES_FILE
    table = read_classes_file(root).get(GROUPS_TABLE, {})
    if not isinstance(table, dict):
        raise ClassNamesError(f"{path}: [{GROUPS_TABLE}] must be a table of group = [class ids]")
    groups, owner = [], {}
    for label, entry in table.items():
        name, members = (entry.get("name"), entry.get("classes")) if isinstance(entry, dict) else (None, entry)
        if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
            raise ClassNamesError(f"{path}: group {label} must list its class ids, e.g. {label} = [\"a\", \"b\"]")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ClassNamesError(f"{path}: the name of group {label} must be a non-empty string")
        if label in classes:
            raise ClassNamesError(f"{path}: group {label} has the id of a class; give it another")
        unknown = sorted(set(members) - set(classes))
        if unknown:
            raise ClassNamesError(f"{path}: group {label} lists {', '.join(unknown)}, which are not class folders")
        for member in members:
            if member in owner:
                raise ClassNamesError(f"{path}: {member} is in groups {owner[member]} and {label}; one at most")
            owner[member] = label
        groups.append(ClassGroup(label, (name or default_name(label)).strip(), tuple(members)))
    return groups


@dataclass(frozen=True)
class ClassKind:
    """What all the classes are ("guitar"), and the ImageNet classes that are that kind of thing: an out-of-scope
    photo the ImageNet check reads as one of them is "a guitar, but not one of my models"."""

    name: str
    imagenet: tuple[str, ...]

    def to_meta(self) -> dict:
        """Plain data for the model's metadata."""
        return {"name": self.name, "imagenet": list(self.imagenet)}

    @classmethod
    def from_meta(cls, meta: dict | None) -> ClassKind | None:
        return None if not meta else cls(meta["name"], tuple(meta["imagenet"]))


def class_kind(root: Path) -> ClassKind | None:
    """The `[kind]` of DATA/classes.toml (name = "guitar", imagenet = ["electric guitar", ...]), or None."""
    from .openset import imagenet_names

    path = Path(root) / CLASS_NAMES_FILE
    table = read_classes_file(root).get(KIND_TABLE)
    if table is None:
        return None
    name, readings = (table.get("name"), table.get("imagenet")) if isinstance(table, dict) else (None, None)
    if not isinstance(name, str) or not name.strip():
        raise ClassNamesError(f'{path}: [{KIND_TABLE}] needs a name, e.g. name = "guitar"')
    if not isinstance(readings, list) or not all(isinstance(r, str) for r in readings):
        raise ClassNamesError(f'{path}: [{KIND_TABLE}] imagenet must list ImageNet class names, e.g. '
                              f'imagenet = ["electric guitar"]')
    unknown = sorted(set(readings) - set(imagenet_names()))
    if unknown:
        raise ClassNamesError(f"{path}: [{KIND_TABLE}] imagenet lists {', '.join(unknown)}, which are not ImageNet-1k "
                              "class names (see torchvision's list)")
    return ClassKind(name.strip(), tuple(readings))


def names_for(classes: list[str], names: dict[str, str] | None) -> dict[str, str]:
    """The names a model carries, with defaults for a model exported before it carried any."""
    return {class_id: (names or {}).get(class_id) or default_name(class_id) for class_id in classes}
