import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "entitlements_site.settings")
django_application = get_wsgi_application()  # sets Django up: the apps are loaded

# The hot API paths are answered ahead of Django's handler, everything else by it (lean_wsgi.py).
from .lean_wsgi import LeanApplication  # noqa: E402  (imports models: after the set-up)

application = LeanApplication(django_application)

# Every module loaded now (the URLconf imports the views), then the objects they made are
# moved out of the garbage collector's sight: they live as long as the worker, and the full
# collections that a batch's allocations set off would otherwise walk all of them each time
# (40 ms pauses every few batches).
get_resolver().url_patterns  # noqa: B018
gc.collect()  # what the imports left behind is freed first, not kept for good
gc.freeze()
