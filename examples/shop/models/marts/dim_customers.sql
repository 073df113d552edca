with customers as (

    select * from {{ ref('stg_customers') }}

),

orders as (

    select
        customer_id,
        count(*) as order_count,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at,
        sum(net_amount) as lifetime_order_value

    from {{ ref('fct_orders') }}
    group by customer_id

),

current_subscriptions as (

    select
        customer_id,
        plan_name as current_plan_name,
        monthly_amount as current_mrr

    from {{ ref('int_subscription_periods') }}
    where is_current
    qualify row_number() over (partition by customer_id order by valid_from desc) = 1

),

final as (

    select
        customers.customer_id,
        customers.email,
        customers.first_name,
        customers.last_name,
        customers.full_name,
        customers.country_code,
        customers.signed_up_at,
        cast(customers.signed_up_at as date) as signup_date,
        coalesce(orders.order_count, 0) as order_count,
        orders.first_ordered_at,
        orders.last_ordered_at,
        coalesce(orders.lifetime_order_value, 0) as lifetime_order_value,
        current_subscriptions.current_plan_name,
        coalesce(current_subscriptions.current_mrr, 0) as current_mrr,
        current_subscriptions.customer_id is not null as is_subscriber

    from customers
    left join orders using (customer_id)
    left join current_subscriptions using (customer_id)

)

select * from final
