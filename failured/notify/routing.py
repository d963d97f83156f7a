"""Who hears about what: routes from failured.toml choose channels by audience, category and task type.

The ``log`` channel is always on; every matching route adds its channels.
"""

from dataclasses import dataclass

from ..errors import ConfigError
from ..rules import check_type

LOG_CHANNEL = "log"
AUDIENCES = ("admin", "user")
ROUTE_KEYS = {"audience", "categories", "task_types", "channels"}


@dataclass(frozen=True)
class Route:
    channels: tuple
    audience: str | None = None  # None: both
    categories: tuple = ()  # empty: any
    task_types: tuple = ()  # empty: any

    def matches(self, audience, category, task_type):
        return ((self.audience is None or self.audience == audience)
                and (not self.categories or category in self.categories)
                and (not self.task_types or task_type in self.task_types))


def channels_for(routes, audience, category=None, task_type=None):
    """Channel names for one notification, ``log`` first, each once."""
    names = [LOG_CHANNEL]
    for route in routes:
        if route.matches(audience, category, task_type):
            names.extend(name for name in route.channels if name not in names)
    return tuple(names)


def _string_list(table, name, path, key, errors):
    value = table.get(name, [])
    if not check_type(value, list, path, f"{key}.{name}", errors, "a list of strings"):
        return ()
    for i, item in enumerate(value):
        check_type(item, str, path, f"{key}.{name}[{i}]", errors, "a string")
    return tuple(item for item in value if isinstance(item, str))


def parse_routes(tables, channel_names, category_names, path, errors):
    """Validate ``[[routes]]``; unknown channels and categories are errors (a typo would go unheard)."""
    if not check_type(tables, list, path, "routes", errors, "an array of tables ([[routes]])"):
        return ()
    routes = []
    for i, table in enumerate(tables):
        key = f"routes[{i}]"
        if not check_type(table, dict, path, key, errors, "a table"):
            continue
        for name in sorted(set(table) - ROUTE_KEYS):
            errors.append(ConfigError(path, f"{key}.{name}", f"unknown key: use one of {', '.join(sorted(ROUTE_KEYS))}"))
        audience = table.get("audience")
        if audience is not None and audience not in AUDIENCES:
            errors.append(ConfigError(path, f"{key}.audience", f"{audience!r} is not an audience: use admin or user"))
        channels = _string_list(table, "channels", path, key, errors)
        if not channels:
            errors.append(ConfigError(path, f"{key}.channels", "missing: name at least one channel"))
        for name in channels:
            if name not in channel_names and name != LOG_CHANNEL:
                errors.append(ConfigError(path, f"{key}.channels", f"no channel named {name!r}: define [channels.{name}]"))
        categories = _string_list(table, "categories", path, key, errors)
        for name in categories:
            if category_names is not None and name not in category_names:
                errors.append(ConfigError(path, f"{key}.categories", f"no category named {name!r}"))
        routes.append(Route(channels, audience, categories, _string_list(table, "task_types", path, key, errors)))
    return tuple(routes)
