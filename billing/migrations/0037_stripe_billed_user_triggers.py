"""Keep `billing_stripe_billed_user` from the triggers of what it mirrors, and fill it.

Two facts, each kept in the transaction of whatever writes its source (the upsert, a
webhook, an operator's SQL):

* a user with a Stripe-billed `usage_monthly` row has a row: a statement-level AFTER
  INSERT trigger on `usage_monthly` adds the new users of the statement's Stripe rows
  (rows are only ever inserted for a new key, so this runs about once a month per user);
* `subscription_live` is true only while the user's `billing_account` status is live:
  the row triggers on `billing_account` set it on every change of the status, a delete or
  a TRUNCATE.

The INSERT trigger says live only of the profiles it has locked (FOR SHARE) and found
live: a concurrent change of the status waits for its transaction, then its own trigger
sees the new row and sets it right (READ COMMITTED, as Django runs). Saying "not live"
of a live user is harmless (the reader checks `billing_account` too); the contrary would
hide unbilled usage, and cannot happen.

The live statuses are `BillingProfile.ACTIVE_SUBSCRIPTION`'s (a test checks each of
them). The functions are SECURITY DEFINER like usage_monthly's: whoever may write usage
or profiles keeps this table right without rights on it.

The triggers and the fill are one migration on purpose (as 0030): `CREATE TRIGGER` holds
off writers of both tables until the fill is committed, so none is missed.
"""

from django.db import migrations

LIVE = "ARRAY['active', 'trialing', 'past_due']"

INSTALL = f"""
CREATE FUNCTION stripe_billed_user_on_usage() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $body$
DECLARE
    fresh text[];
    live text[];
BEGIN
    SELECT array_agg(DISTINCT n.user_id) INTO fresh
    FROM new_rows n
    WHERE n.billed_via = 'stripe'
      AND NOT EXISTS (SELECT 1 FROM billing_stripe_billed_user h WHERE h.user_id = n.user_id);
    IF fresh IS NULL THEN
        RETURN NULL;
    END IF;
    -- Live only as long as the lock is held: a change of the status waits for this
    -- transaction, and its trigger then finds the row inserted here.
    SELECT array_agg(p.user_id) INTO live
    FROM (SELECT user_id FROM billing_account
          WHERE user_id = ANY(fresh) AND subscription_status = ANY({LIVE})
          ORDER BY user_id
          FOR SHARE) p;
    INSERT INTO billing_stripe_billed_user (user_id, subscription_live)
    SELECT f, f = ANY(COALESCE(live, '{{}}'))
    FROM unnest(fresh) AS f
    ORDER BY f
    ON CONFLICT (user_id) DO NOTHING;
    RETURN NULL;
END
$body$;

CREATE FUNCTION stripe_billed_user_on_profile() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $body$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        UPDATE billing_stripe_billed_user SET subscription_live = false
        WHERE user_id = OLD.user_id AND subscription_live
          AND (TG_OP = 'DELETE' OR OLD.user_id <> NEW.user_id
               OR NOT (NEW.subscription_status = ANY({LIVE})));
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.subscription_status = ANY({LIVE}) THEN
        UPDATE billing_stripe_billed_user SET subscription_live = true
        WHERE user_id = NEW.user_id AND NOT subscription_live;
    END IF;
    RETURN NULL;
END
$body$;

CREATE FUNCTION stripe_billed_user_on_profile_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $body$
BEGIN
    UPDATE billing_stripe_billed_user SET subscription_live = false WHERE subscription_live;
    RETURN NULL;
END
$body$;

CREATE TRIGGER stripe_billed_user_on_usage AFTER INSERT ON usage_monthly
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_billed_user_on_usage();
CREATE TRIGGER stripe_billed_user_on_profile AFTER INSERT OR UPDATE OR DELETE
    ON billing_account
    FOR EACH ROW EXECUTE FUNCTION stripe_billed_user_on_profile();
CREATE TRIGGER stripe_billed_user_on_profile_truncate AFTER TRUNCATE ON billing_account
    FOR EACH STATEMENT EXECUTE FUNCTION stripe_billed_user_on_profile_truncate();
"""

FILL = f"""
INSERT INTO billing_stripe_billed_user (user_id, subscription_live)
SELECT s.user_id, COALESCE(p.subscription_status = ANY({LIVE}), false)
FROM (SELECT DISTINCT user_id FROM usage_monthly WHERE billed_via = 'stripe') s
LEFT JOIN billing_account p ON p.user_id = s.user_id
ON CONFLICT (user_id) DO NOTHING;
"""

UNINSTALL = """
DROP TRIGGER IF EXISTS stripe_billed_user_on_usage ON usage_monthly;
DROP TRIGGER IF EXISTS stripe_billed_user_on_profile ON billing_account;
DROP TRIGGER IF EXISTS stripe_billed_user_on_profile_truncate ON billing_account;
DROP FUNCTION IF EXISTS stripe_billed_user_on_usage();
DROP FUNCTION IF EXISTS stripe_billed_user_on_profile();
DROP FUNCTION IF EXISTS stripe_billed_user_on_profile_truncate();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0036_stripe_billed_user"),
    ]

    operations = [
        migrations.RunSQL(sql=INSTALL, reverse_sql=UNINSTALL),
        migrations.RunSQL(sql=FILL, reverse_sql="TRUNCATE billing_stripe_billed_user"),
    ]
