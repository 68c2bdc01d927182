"""Usage, pricing, credits and invoices (built in the billing issues)."""
