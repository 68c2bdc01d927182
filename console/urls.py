from django.urls import path

from console import views

urlpatterns = [
    path("", views.home, name="home"),
    path("billing/credits/", views.buy_credits, name="buy-credits"),
    path("billing/limits/", views.set_spending_limits, name="set-spending-limits"),
    path("billing/payment-method/", views.add_payment_method, name="add-payment-method"),
]
