#!/usr/bin/env bash
# `make demo`: the quickstart on the local stack. Creates a `shop` database with
# an `orders` table holding rows, a role for Siphon, applies
# examples/quickstart.yaml, waits for Ready, writes some changes, and prints the
# records that arrive in Kafka and `kubectl get pgcap`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=/dev/null
source "$ROOT/.stack/env"
export ROOT
# shellcheck source=e2e/stack/kafka.sh
source "$ROOT/e2e/stack/kafka.sh"

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# A repeatable demo: remove what an earlier run left (the finalizer drops
# that capture's slot and publication).
kubectl delete -f "$ROOT/examples/quickstart.yaml" -f "$ROOT/examples/polling.yaml" --ignore-not-found --wait=true --timeout=120s >/dev/null
for topic in shop.public.orders shop-polling.public.orders; do
  kafka_topics "$SIPHON_STACK_DIR" --delete --if-exists --topic "$topic" >/dev/null 2>&1 || true
done

say "a shop database with an orders table and a siphon role"
psql -v ON_ERROR_STOP=1 -q -d postgres <<'SQL'
DROP DATABASE IF EXISTS shop WITH (FORCE);
CREATE DATABASE shop;
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'siphon') THEN
    CREATE ROLE siphon WITH LOGIN REPLICATION PASSWORD 'siphon-demo-password';
  END IF;
END $$;
SQL
psql -v ON_ERROR_STOP=1 -q -d shop <<'SQL'
CREATE TABLE public.orders (
  id bigserial PRIMARY KEY,
  customer text NOT NULL,
  total numeric(10,2) NOT NULL,
  status text NOT NULL DEFAULT 'new',
  created_at timestamptz NOT NULL DEFAULT now(),
  -- the polling cursor (second part of the demo): set by the database
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX orders_updated_at ON public.orders (updated_at, id);
CREATE FUNCTION public.orders_touch() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN NEW.updated_at := clock_timestamp(); RETURN NEW; END$$;
CREATE TRIGGER orders_touch BEFORE UPDATE ON public.orders
  FOR EACH ROW EXECUTE FUNCTION public.orders_touch();
ALTER TABLE public.orders OWNER TO siphon;
-- lateness: Auto reads other sessions' transaction starts
GRANT pg_read_all_stats TO siphon;
GRANT CREATE ON SCHEMA public TO siphon;
GRANT CREATE ON DATABASE shop TO siphon;
INSERT INTO public.orders (customer, total)
SELECT 'customer-' || g, (g * 7.25)::numeric(10,2) FROM generate_series(1, 5) g;
SQL
psql -q -d shop -c 'SELECT id, customer, total, status FROM public.orders ORDER BY id'

say "kubectl apply -f examples/quickstart.yaml"
kubectl apply -f "$ROOT/examples/quickstart.yaml"

say "kubectl wait --for=condition=Ready pgcap/shop"
if ! kubectl wait --for=condition=Ready --timeout=180s pgcap/shop; then
  kubectl get pgcap shop -o yaml
  echo "the capture did not become Ready; see .stack/logs/operator.log and .stack/logs/pods/" >&2
  exit 1
fi

say "new writes: an insert, an update, a delete"
psql -q -d shop <<'SQL'
INSERT INTO public.orders (customer, total) VALUES ('walk-in', 19.99);
UPDATE public.orders SET status = 'shipped' WHERE id = 1;
DELETE FROM public.orders WHERE id = 2;
SQL

say "records in Kafka topic shop.public.orders (key | value)"
kafka_console_consume "$SIPHON_STACK_DIR" --topic shop.public.orders --from-beginning --timeout-ms 15000 \
  --property print.key=true --property key.separator=' | ' 2>/dev/null | head -n 20 || true

say "polling the same table: kubectl apply -f examples/polling.yaml (no slot, no publication)"
kubectl apply -f "$ROOT/examples/polling.yaml"
if ! kubectl wait --for=condition=Ready --timeout=180s pgcap/shop-polling; then
  kubectl get pgcap shop-polling -o yaml
  echo "the polling capture did not become Ready; see .stack/logs/operator.log and .stack/logs/pods/" >&2
  exit 1
fi
psql -q -d shop <<'SQL'
UPDATE public.orders SET status = 'paid' WHERE id = 3;
DELETE FROM public.orders WHERE id = 4;
SQL

say "records in Kafka topic shop-polling.public.orders: the rows (op u, Upsert), then the delete (op d, tombstone)"
kafka_console_consume "$SIPHON_STACK_DIR" --topic shop-polling.public.orders --from-beginning --timeout-ms 15000 \
  --property print.key=true --property key.separator=' | ' 2>/dev/null | head -n 20 || true

say "kubectl get pgcap"
kubectl get pgcap

cat <<'TXT'

Clean up:
  kubectl delete -f examples/quickstart.yaml -f examples/polling.yaml   # the finalizers drop the slot,
                                                                         # publication, triggers and their table
  make stack-down                              # stops PostgreSQL, Kafka and the control plane
TXT
