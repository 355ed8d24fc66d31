from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from inventory.apis import ProductListApi
from l2c.health import health
from sagas.apis import SagaDetailApi
from sagas.metrics import register_saga_metrics

# /metrics (django_prometheus.urls below) serves the default registry: add the saga figures.
register_saga_metrics()

# Everything under /api/ is named in the "api" namespace (reverse("api:order-detail", ...)).
api_urlpatterns = [
    # Liveness (?probe=live) and readiness; no authentication, never cached.
    path("health/", health, name="health"),
    path("products/", ProductListApi.as_view(), name="product-list"),
    path("", include("orders.urls")),
    path("sagas/<uuid:saga_id>/", SagaDetailApi.as_view(), name="saga-detail"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    # Swagger UI from our own static files (the sidecar app). No ReDoc page: its stock
    # template pulls web fonts from Google.
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include((api_urlpatterns, "api"))),
    path("", include("django_prometheus.urls")),
]

# Unknown /api/ paths and malformed ids (e.g. a saga id that is not a UUID) answer in the
# API's JSON error shape; other paths keep Django's pages.
handler404 = "l2c.api.not_found"
handler500 = "l2c.api.server_error"
