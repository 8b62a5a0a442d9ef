-- Nexmark q4: average price per category (bids within the auction's lifetime) (shared/nexmark.md, unchanged)
SELECT Q.category, avg(Q.final) FROM (
  SELECT max(B.price) AS final, A.category FROM auction A JOIN bid B
    ON A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
  GROUP BY A.id, A.category) Q GROUP BY Q.category;
