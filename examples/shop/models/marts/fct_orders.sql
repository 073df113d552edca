{{
    config(
        materialized='incremental',
        unique_key='order_id',
        on_schema_change='append_new_columns'
    )
}}

with orders as (

    select * from {{ ref('stg_orders') }}
    {% if is_incremental() %}
    where updated_at >= (
        select max(updated_at) - interval '{{ var("orders_lookback_hours") }} hours'
        from {{ this }}
    )
    {% endif %}

),

items as (

    select
        order_id,
        count(*) as item_count,
        sum(quantity) as unit_count,
        sum(line_amount) as gross_amount

    from {{ ref('stg_order_items') }}
    group by order_id

),

payments as (

    select * from {{ ref('int_order_payments') }}

),

final as (

    select
        orders.order_id,
        orders.customer_id,
        orders.order_status,
        orders.ordered_at,
        cast(orders.ordered_at as date) as order_date,
        orders.updated_at,
        coalesce(items.item_count, 0) as item_count,
        coalesce(items.unit_count, 0) as unit_count,
        coalesce(items.gross_amount, 0) as gross_amount,
        coalesce(payments.paid_amount, 0) as paid_amount,
        coalesce(payments.coupon_amount, 0) as coupon_amount,
        coalesce(payments.refunded_amount, 0) as refunded_amount,
        coalesce(payments.paid_amount, 0)
            - coalesce(payments.coupon_amount, 0)
            - coalesce(payments.refunded_amount, 0) as net_amount,
        payments.primary_payment_method,
        payments.paid_at,
        orders._loaded_at

    from orders
    left join items using (order_id)
    left join payments using (order_id)

)

select * from final
