-- Nexmark q2: selection (shared/nexmark.md, unchanged)
SELECT auction, price FROM bid WHERE auction % 123 = 0;
