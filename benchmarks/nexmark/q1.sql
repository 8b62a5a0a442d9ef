-- Nexmark q1: currency conversion (shared/nexmark.md, unchanged)
SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid;
