from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.urls import social_urlpatterns
from billing import api as billing_api
from billing import views as billing_views
from billing.webhooks import stripe_webhook
from clusters import api as clusters_api
from platform_site import views

api_v1 = [
    path("me", billing_api.Me.as_view(), name="me"),
    path("me/usage", billing_api.MyUsage.as_view(), name="me-usage"),
    path("me/billing", billing_api.MyBilling.as_view(), name="me-billing"),
    path("users", clusters_api.UserList.as_view(), name="users"),
    path("users/<str:user_id>", clusters_api.UserDetail.as_view(), name="user"),
    path(
        "users/<str:user_id>/assignment",
        clusters_api.AssignmentView.as_view(),
        name="user-assignment",
    ),
    path("clusters", clusters_api.ClusterList.as_view(), name="clusters"),
    path("usage", billing_api.Usage.as_view(), name="usage"),
]

admin.site.site_header = "Hopsworks Platform Console"
admin.site.site_title = "Platform Console"
admin.site.index_title = "Operations"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("api/v1/", include((api_v1, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("auth/", include(social_urlpatterns, namespace="social")),
    path("", billing_views.account_page, name="home"),
    path("", include("billing.urls")),
    path("", include("accounts.urls")),
]
