with payments as (

    select * from {{ ref('stg_payments') }}

),

orders as (

    select order_id, customer_id from {{ ref('stg_orders') }}

),

invoices as (

    select invoice_id, customer_id from {{ ref('stg_invoices') }}

),

refunds as (

    select
        payment_id,
        sum(amount) as refunded_amount

    from {{ ref('stg_refunds') }}
    group by payment_id

),

final as (

    select
        payments.payment_id,
        payments.order_id,
        payments.invoice_id,
        coalesce(orders.customer_id, invoices.customer_id) as customer_id,
        payments.payment_type,
        payments.payment_method,
        payments.payment_status,
        payments.amount,
        coalesce(refunds.refunded_amount, 0) as refunded_amount,
        payments.amount - coalesce(refunds.refunded_amount, 0) as net_amount,
        payments.created_at,
        cast(payments.created_at as date) as payment_date

    from payments
    left join orders using (order_id)
    left join invoices using (invoice_id)
    left join refunds using (payment_id)

)

select * from final
