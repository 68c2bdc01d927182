"""The operator personas the permission tests use (tests/conftest.py makes them), in the
order of the matrices' columns."""

VIEW_EVERYTHING = "every view_* permission"
PERSONAS = {
    "no_permission_staff": (),
    "view_only_staff": VIEW_EVERYTHING,
    # What the users admin's suspend/assign actions used to need, and all it grants now.
    "change_user_staff": ("accounts.change_user",),
    "support_staff": (
        "accounts.view_user",
        "accounts.change_user",
        "accounts.suspend_user",
        "clusters.view_hopsworkscluster",
        "clusters.add_userhopsworksassignment",
        "clusters.change_userhopsworksassignment",
        "clusters.delete_userhopsworksassignment",
        "clusters.view_capacitywait",
        "clusters.view_hopsworksaccount",
        "clusters.change_hopsworksaccount",
        "billing.view_servicestop",
    ),
    "finance_staff": (
        "accounts.view_user",
        "clusters.view_hopsworkscluster",
        "billing.view_usagedaily",
        "billing.view_usercredits",
        "billing.view_creditledgerentry",
        "billing.view_usagecollectionrun",
        "billing.view_billinghistory",
        "billing.view_stripeevent",
        "billing.change_stripeevent",
        "billing.change_billing_mode",
        "billing.grant_credits",
        "billing.debit_account",
        "billing.view_billingadjustment",
        "billing.view_creditpurchase",
        "billing.refund_credit_purchase",
        "billing.collect_usage",
        "billing.sync_invoices",
        "billing.view_reconciliationrun",
        "billing.view_servicestop",
        "billing.lift_service_stop",
        "billing.close_account",
        "billing.view_accountclosure",
        "billing.change_spending_limits",
        "billing.view_spendingalert",
        "billing.view_spendinglimitchange",
        "billing.export_usagedaily",
        "billing.export_billinghistory",
        "billing.export_creditledgerentry",
        "accounts.export_user",
    ),
    "superuser": None,
}

PERSONA_COLUMNS = tuple(PERSONAS)
