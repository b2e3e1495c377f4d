"""Staff roles are Django groups; the permission each group holds lives in data migrations."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

PRODUCT_MANAGERS = "Product managers"
SUPPORT = "Support"


def user_in_group(user: AbstractBaseUser | AnonymousUser, group: str) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    cache = getattr(user, "_group_names", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True))
        user._group_names = cache
    return group in cache


def is_product_manager(user) -> bool:
    return user_in_group(user, PRODUCT_MANAGERS)


def is_support(user) -> bool:
    return user_in_group(user, SUPPORT)


def grant_group_permissions(apps, app_label: str, grants: dict[str, list[str]]) -> None:
    """For data migrations: give each group (created if missing) codenames of `app_label`.

    Permissions are normally created after migrate; create them now so the grant can find them.
    """
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config(app_label)
    app_config.models_module = True
    create_permissions(app_config, verbosity=0, apps=apps)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for group_name, codenames in grants.items():
        group, _ = Group.objects.get_or_create(name=group_name)
        perms = Permission.objects.filter(content_type__app_label=app_label, codename__in=codenames)
        missing = set(codenames) - set(perms.values_list("codename", flat=True))
        if missing:
            raise RuntimeError(f"Unknown permissions for {app_label}: {sorted(missing)}")
        group.permissions.add(*perms)


def model_permissions(models: list[str], actions: list[str]) -> list[str]:
    return [f"{action}_{model}" for model in models for action in actions]
