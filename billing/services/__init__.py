"""Everything that writes billing (DESIGN.md "Billing"), one module per concept:

- invoices: drafts, lines, numbering, issue, void;
- payments: charging an invoice through the payment provider;
- purchases: top-up purchases;
- subscriptions: subscribing, cancelling, plan changes with proration;
- period_close: closing ended periods (the renewal invoice with its overage lines).

Lock order, everywhere: customer or subscription row first, then the invoice, then the year's
InvoiceSequence row last (held only from numbering to commit). Amounts are Decimal, rounded
half-up to the currency's minor unit per line; an invoice's total is the sum of its lines.
"""
