-- Nexmark q3: local item suggestion (join of auction with person) (shared/nexmark.md, unchanged)
SELECT P.name, P.city, P.state, A.id FROM auction A JOIN person P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca');
