-- Daily revenue. Shop revenue is read from the orders (what they were paid, less coupons, which
-- are discounts); subscription revenue from invoice payments; refunds count on the day issued.
with orders as (

    select * from {{ ref('fct_orders') }}
    where paid_at is not null

),

invoice_payments as (

    select * from {{ ref('fct_payments') }}
    where payment_type = 'invoice'
      and payment_status = 'succeeded'

),

refunds as (

    select * from {{ ref('stg_refunds') }}

),

days as (

    {{ date_spine(ref('fct_payments'), 'payment_date', 'payment_date') }}

),

daily_orders as (

    select
        cast(paid_at as date) as revenue_date,
        sum(paid_amount - coupon_amount) as order_revenue,
        sum(coupon_amount) as coupon_amount,
        count(*) as paid_orders

    from orders
    group by 1

),

daily_subscriptions as (

    select
        payment_date as revenue_date,
        sum(amount) as subscription_revenue

    from invoice_payments
    group by 1

),

daily_refunds as (

    select
        cast(refunded_at as date) as revenue_date,
        sum(amount) as refunds

    from refunds
    group by 1

),

final as (

    select
        days.date_day as revenue_date,
        coalesce(daily_orders.order_revenue, 0) as order_revenue,
        coalesce(daily_subscriptions.subscription_revenue, 0) as subscription_revenue,
        coalesce(daily_orders.order_revenue, 0)
            + coalesce(daily_subscriptions.subscription_revenue, 0) as gross_revenue,
        coalesce(daily_orders.coupon_amount, 0) as coupon_amount,
        coalesce(daily_refunds.refunds, 0) as refunds,
        coalesce(daily_orders.order_revenue, 0)
            + coalesce(daily_subscriptions.subscription_revenue, 0)
            - coalesce(daily_refunds.refunds, 0) as net_revenue,
        coalesce(daily_orders.paid_orders, 0) as paid_orders

    from days
    left join daily_orders on days.date_day = daily_orders.revenue_date
    left join daily_subscriptions on days.date_day = daily_subscriptions.revenue_date
    left join daily_refunds on days.date_day = daily_refunds.revenue_date

)

select * from final
