from .roles import is_product_manager, is_support


def roles(request):
    user = request.user
    return {
        "is_product_manager": is_product_manager(user),
        "is_support": is_support(user),
    }
