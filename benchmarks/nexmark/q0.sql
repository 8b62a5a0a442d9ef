-- Nexmark q0: pass-through (shared/nexmark.md, unchanged)
SELECT auction, bidder, price, date_time FROM bid;
