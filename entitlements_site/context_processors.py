from django.contrib.auth.models import AnonymousUser

from core.roles import is_product_manager, is_support


def roles(request):
    # A request refused before AuthenticationMiddleware (a bad Host header: the 400 page) has
    # no user yet; its error page must still render.
    user = getattr(request, "user", None) or AnonymousUser()
    return {
        "is_product_manager": is_product_manager(user),
        "is_support": is_support(user),
    }
